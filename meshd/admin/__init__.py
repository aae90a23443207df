"""The admin server: metrics, health, config, routing views and the dashboard."""
