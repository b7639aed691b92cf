"""pcn-pipeline: predictive coding networks trained by the local PC rule and by backprop
through the unrolled inference, with a cross-entropy weight, plus an ``ae`` baseline."""
__version__ = "0.1.0"
