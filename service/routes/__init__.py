"""HTTP controllers, one module per domain. Handlers stay thin: validation by schemas, work in services."""
