"""The running lab: `lklab up` / `ps` / `down` (up), the services it starts (services) and the
live traffic of `--with-traffic` (traffic)."""
