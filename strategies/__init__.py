"""Trading strategies: pure decision functions over a read-only market context."""
