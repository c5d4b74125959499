"""Train CIFAR-10 classifiers from scratch and measure their batch-1 inference latency."""

__version__ = "0.1.0"
