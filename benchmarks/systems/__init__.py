"""One adapter per benchmarked system; the contract is in README.md beside this file."""
