"""OpenVision v1 (CLIPS): dual contrastive + caption pretraining, the baseline."""
