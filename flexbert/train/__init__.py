"""Training: run config -> builders -> Composer Trainer. Entry point: `main.py` (`flexbert.train.trainer.main`)."""
