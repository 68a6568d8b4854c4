"""Price models and their lifecycle: features, kinds, training, model registry, learner."""
