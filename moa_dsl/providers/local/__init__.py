"""The embedded runtime: llama.cpp servers (`llamacpp`) for the built-in models (`registry`)."""

__all__: list[str] = []
