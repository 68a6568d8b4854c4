"""The operating system: process groups and ports."""
