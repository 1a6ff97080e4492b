"""The conventions everything else stands on: frames (RAS <-> LPS), pose (6 parameters <-> 4x4 about a
centre), the in-memory volume and labelmap, vertebra names and label schemes, pose-error metrics."""
