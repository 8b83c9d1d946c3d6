"""Background removal for photos of people: two segmentation networks, a predictor and an inference engine."""

# The model names live here, free of torch, so that settings can be checked without loading it.
MODEL_NAMES: tuple[str, ...] = ("deeplab", "unet")
