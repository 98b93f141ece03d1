"""The page of one session: an app bar with the message line, a drawer with the panels, and the
view layout (axial primary: axial slice view, 3-D view, coronal and sagittal views)."""
from __future__ import annotations

from pathlib import Path

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

STATIC = Path(__file__).with_name("static")
STATIC_URL = "__spdsegment"


def enable_static(server) -> None:
    """Serve ``static/`` (the upload script) next to the page; relative URLs, so the gateway prefix works."""
    server.enable_module({"serve": {STATIC_URL: str(STATIC)}, "scripts": [f"{STATIC_URL}/spd_upload.js"]})


def build_page(server, layout_manager, panels, title: str = "SPDSegment"):
    with VAppLayout(server, template_name="main", full_height=True) as page:
        page.root.theme = "dark"
        client.Style("html { overflow-y: hidden; } .spd-drawer .v-card-text { padding-bottom: 4px; }")
        with v3.VAppBar(density="compact"):
            v3.VToolbarTitle(title, classes="flex-grow-0 mr-4", style="user-select: none;")
            v3.VAlert(v_show="message", text=("message",), type=("message_type || 'info'",), density="compact",
                      variant="tonal", closable=True, click_close="message = ''", id="spd-message",
                      classes="text-caption mx-2")
            v3.VProgressCircular(indeterminate=("!!trame__busy",), size=16, width=2, classes="mr-3")
        with v3.VNavigationDrawer(permanent=True, width=380, classes="spd-drawer"):
            html.Div("data folder: {{ data_root }}", classes="text-caption px-4 pt-2 text-grey")
            for panel in panels:
                panel.build()
        with v3.VMain(), html.Div(style="display: flex; height: calc(100vh - 48px); width: 100%;", id="spd-views"):
            layout_manager.initialize_layout_grid(page)
    return page
