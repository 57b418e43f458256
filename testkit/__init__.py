"""What the tests and the benchmark both need: a throwaway PostgreSQL cluster and a counting
program generator. Not used by the app."""
