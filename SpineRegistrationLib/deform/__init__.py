"""Deformable registration: the spine-wide field from the per-vertebra poses, and CT-to-CT registration.

The field itself (:mod:`..core.displacement`), its working grids (:mod:`..core.grid`) and its
files and SimpleITK forms (:mod:`..io.displacement`) live below; here are the algorithms:

- ``polyrigid``   the field from per-vertebra rigid poses (log-Euclidean se(3) blending)
- ``refine``      the vertebra poses refined jointly against the X-rays
- ``similarity``  3D similarity measures of two CTs (MSE, NCC, LNCC, MI, MIND-SSC)
- ``affine``      iterative rigid / affine-without-scaling CT-to-CT registration
- ``articulated`` CT to CT vertebra by vertebra: each vertebra rigid on its own, blended poly-rigidly
- ``freeform``    the vertebra-by-vertebra field refined near the bone (a smooth displacement before it)
- ``rigid_network`` the learned rigid CT-to-CT network (keypoints + Kabsch) and its model file
- ``network``     the learned deformable network (MONAI VoxelMorph) and its model file
- ``training``    the training of both (``spinereg train-deform [--network rigid]``)
- ``ct_pair``     CT to CT: the linear stage (iterative, learned or both), then the deformable
                  network (``spinereg deform --fixed/--moving``)
"""
