"""``fairway archiver``: keeps rejected messages queryable per device."""
