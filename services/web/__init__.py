"""The web page and the HTTP/JSON API (services.web.http)."""
