"""The tables and what reads and writes them: engines, migrations, adoption of the product's
tables, cache entries with their fate records, program history and events, staged programs and
rejections. The store knows no generator."""
