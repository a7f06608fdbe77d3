"""The chaos suite: reliability claims turned into measured figures on real processes (kills,
broker loss, fuzzed input, concurrent readers, the security surface). `lklab chaos run` and
`make chaos` run the checks; `lklab chaos report` writes RELIABILITY.md and reliability.json."""
