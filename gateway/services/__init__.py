"""Family-agnostic orchestration between route families and backends."""
