"""The operator console's web pages (`/console`): server-rendered HTML over the same `Console` the JSON API
uses; `pages.endpoints` is the APIRouter the app mounts, `sessions` the browser sessions, `charts` the SVG."""
