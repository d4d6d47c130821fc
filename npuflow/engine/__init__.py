"""Model engines: one interface (base.Engine), one implementation per runtime."""
