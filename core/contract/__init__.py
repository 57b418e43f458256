"""The contract: what a client's answers and a program are, the key a program is cached under, and
what makes a program right for its client. Pure rules, no database."""
