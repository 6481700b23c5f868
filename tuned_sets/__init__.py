"""Shipped tuned sets and their index (index.yaml)."""
