"""PyTorch side: config, data (built-in benchmark + adapters), model, train, eval."""
