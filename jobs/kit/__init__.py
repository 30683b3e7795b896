"""The kit every job shares: config loading and the CLI, Ray start-up, MLflow tracking,
model references and their feature contract, the training-worker loop parts (optimizer,
schedule, seeds, checkpoints, the non-finite stop), metrics and pictures."""
