"""The operating system and time: process groups, ports, and bounded waits."""
