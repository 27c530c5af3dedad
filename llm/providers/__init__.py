"""Providers: objects that turn calls into routed requests. Today: ``vllm_openai``."""

from .vllm_openai import VLLMOpenAIProvider

__all__ = ["VLLMOpenAIProvider"]
