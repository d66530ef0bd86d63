"""Training-data generation: chat conversations -> base-model features for draft-head training."""
