"""Per-endpoint pools of keep-alive upstream connections."""
