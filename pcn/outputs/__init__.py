"""What a study writes and draws: run naming, aggregated tables and figures."""
