"""Network pieces of the EAR + FADeR detector, one file per architecture.

* :mod:`.maskers`      -- frozen "pre-trained attention" saliency (ViT CLS attention, CNN feature norm)
* :mod:`.mosaic`       -- mosaic obfuscation of the masked region (EAR)
* :mod:`.unet`         -- the 5-level reconstruction U-Net with attenuation gates on its skips
* :mod:`.fader`        -- FADeR patch-error predictors (MLP, small ViT), ranking loss, soft mask
* :mod:`.msgms`        -- multi-scale gradient-magnitude similarity (score + loss) and SSIM loss
* :mod:`.anomaly`      -- the whole pipeline (masker -> obfuscation -> FADeR -> U-Net -> MSGMS map)
"""
