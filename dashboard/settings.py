"""Dashboard settings from ``LINEWATCH_*`` environment variables (besides the storage ones).

==========================================  ============  ==========================================
variable                                    default       meaning
==========================================  ============  ==========================================
``LINEWATCH_DASHBOARD_REFRESH_S``           ``5``         Live page refresh period (seconds)
``LINEWATCH_DETECTOR_METRICS_URL``          unset         detector service's Prometheus ``/metrics``;
                                                          unset: consumer lag shows "n/a"
``LINEWATCH_DASHBOARD_SHIFT_STARTS``        ``6,14,22``   shift start hours (UTC) for the "shift" window
``LINEWATCH_DASHBOARD_USUAL_DAYS``          ``7``         days before the window that make "usual rate"
``LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES``  ``5``         failed logins per browser session before it
                                                          must wait (besides the per-account lockout)
``LINEWATCH_DASHBOARD_CSV_MAX_ROWS``        ``100000``    cap of one History CSV export
``LINEWATCH_DASHBOARD_SESSION_HOURS``       ``12``        a login lasts this long (reloads keep it)
``LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES_`` ``20``        failed logins from one client address (in 15
``PER_ADDRESS``                                           min) before it must wait (30 s, doubling)
``LINEWATCH_DASHBOARD_TRUSTED_PROXY_HOPS``  ``0``         reverse proxies in front that append to
                                                          ``X-Forwarded-For``; 0: use the peer address
``LINEWATCH_DASHBOARD_COOKIE_SECURE``       unset         force the cookie's ``Secure`` flag on/off;
                                                          unset: on when the request came over https
==========================================  ============  ==========================================
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", extra="ignore")

    dashboard_refresh_s: float = Field(5.0, gt=0)
    detector_metrics_url: str | None = None
    dashboard_shift_starts: str = "6,14,22"
    dashboard_usual_days: float = Field(7.0, gt=0)
    dashboard_login_max_failures: int = Field(5, ge=1)
    dashboard_csv_max_rows: int = Field(100_000, ge=1)
    dashboard_session_hours: float = Field(12.0, gt=0)
    dashboard_login_max_failures_per_address: int = Field(20, ge=1)
    # only trust X-Forwarded-For when a proxy we run sets it; anyone can send the header
    dashboard_trusted_proxy_hops: int = Field(0, ge=0)
    dashboard_cookie_secure: bool | None = None
    # the plant's time zone for times shown on the Models page (IANA name, e.g. Europe/Berlin);
    # unset: the server's; exports stay in UTC
    plant_timezone: str | None = None

    def shift_hours(self) -> list[int]:
        hours = sorted({int(h) % 24 for h in self.dashboard_shift_starts.split(",") if h.strip()})
        return hours or [0]
