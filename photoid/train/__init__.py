"""Training: the one loop every training stage shares (photoid.train.loop) and what each stage trains (photoid.train.fold)."""
