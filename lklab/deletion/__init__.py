"""Deletion requests end to end: what `lklab forget` purges, store by store (lklab.deletion.purge),
and what a scan still finds readable of a user (lklab.deletion.scan). Keys and tombstones are
lklab.privacy's."""
