"""Fine-tuning evaluation: task loaders, input transforms, heads, metrics and the report."""
