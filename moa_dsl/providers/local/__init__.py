"""The embedded runtime: llama.cpp servers (`llamacpp`) for the built-in models (`registry`)."""
