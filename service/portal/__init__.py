"""The customers' portal: their own trust boundary (one-time links, session cookies, CSRF), server-rendered
pages in their language, calling the consent use cases directly."""
