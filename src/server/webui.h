// The pages `bigmoe serve` shows (src/server/webui/, built into the binary: no network, no CDN):
// the chat at / and the live dashboard at /dashboard.
#pragma once

namespace bigmoe::server {

const char* chat_page();
const char* dashboard_page();

}  // namespace bigmoe::server
