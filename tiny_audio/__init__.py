"""tiny-audio: train speech-recognition models from a frozen audio encoder, a small projector and a frozen LLM."""

__version__ = "0.1.0"
