"""The contour generator: a StyleGAN2 that draws 4-class cell label maps.

* :mod:`cellgen.gen.networks`: the networks, presets (``paper512``, ``small256``, ``small128``, ``tiny``),
  :func:`~cellgen.gen.networks.z_from_seed`;
* :mod:`cellgen.gen.generator`: :class:`~cellgen.gen.generator.ContourGenerator`, the
  sampling API the rest of cellgen uses;
* :mod:`cellgen.gen.train`: :func:`~cellgen.gen.train.train_contours` (options in
  :class:`~cellgen.gen.train.ContourTrainingConfig`), resumable training;
* :mod:`cellgen.gen.import_official`: safe import of official stylegan2-ada-pytorch ``.pkl``.
* :mod:`cellgen.gen.evaluate`: :func:`~cellgen.gen.evaluate.evaluate_contours`, the generator
  against its corpus (``cellgen eval contours``; figures and markdown in
  :mod:`cellgen.gen.eval_report`), and snapshot ranking;
* :mod:`cellgen.gen.diversity`: pairwise foreground IoU and improved precision/recall on arrays.

Submodules are imported on demand (torch is heavy).
"""
