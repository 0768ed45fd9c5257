"""Model side of the platform: Florence-2 task language, model factory, training and evaluation."""
