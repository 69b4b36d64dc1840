"""Model code: images, the ViT, views, the stage-1 decomposition (field fit and shift), the
artifact model, the stage-2 denoiser and its training step. Torch and numpy only: nothing here
imports Ray (``tests/test_layout.py``)."""
