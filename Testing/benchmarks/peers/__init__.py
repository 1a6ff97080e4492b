"""Peer renderers driven with SpineRegistration's geometry, pose and units (see install_peers.sh)."""
