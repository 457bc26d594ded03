// The chat page `bigmoe serve` shows at / (src/server/webui/chat.html, built into the binary: no
// network, no CDN).
#pragma once

namespace bigmoe::server {

const char* chat_page();

}  // namespace bigmoe::server
