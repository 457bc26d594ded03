// The load tester against a scripted server: a stream that ends with a finish reason counts its
// tokens and latencies; one that fails mid-stream (an error event, as llama-server sends when its
// output parser gives up) or ends without a finish reason counts as failed, with the reason.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "server/loadtest.h"

namespace bigmoe {
namespace {

using Json = nlohmann::json;

// An OpenAI-ish server whose completions stream `n_tokens` tokens and then does what `ending`
// says: "finish" (a finish reason, usage, [DONE]), "error" (an error event) or "cut" (nothing).
class Scripted {
  public:
    explicit Scripted(std::string ending) : ending_(std::move(ending)) {
        srv_.Get("/health", [](const httplib::Request&, httplib::Response& res) {
            res.set_content("{\"status\":\"ok\"}", "application/json");
        });
        srv_.Post("/tokenize", [](const httplib::Request& req, httplib::Response& res) {
            const std::string text = Json::parse(req.body)["content"];
            Json toks = Json::array();
            for (size_t i = 0; i < text.size(); ++i) toks.push_back(int(i));
            res.set_content(Json{{"tokens", toks}}.dump(), "application/json");
        });
        srv_.Post("/detokenize", [](const httplib::Request& req, httplib::Response& res) {
            res.set_content(Json{{"content", std::string(Json::parse(req.body)["tokens"].size(), 'x')}}.dump(),
                            "application/json");
        });
        srv_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
            const int n = Json::parse(req.body)["max_tokens"];
            ++requests_;
            res.set_chunked_content_provider("text/event-stream", [this, n](size_t, httplib::DataSink& sink) {
                auto send = [&](const std::string& data) {
                    const std::string ev = "data: " + data + "\n\n";
                    sink.write(ev.data(), ev.size());
                };
                for (int i = 0; i < n; ++i)
                    send(Json{{"choices", {{{"index", 0}, {"text", "t"}, {"finish_reason", nullptr}}}}}.dump());
                if (ending_ == "finish") {
                    send(Json{{"choices", {{{"index", 0}, {"text", ""}, {"finish_reason", "length"}}}},
                              {"usage", {{"prompt_tokens", 7}, {"completion_tokens", n}}}}
                             .dump());
                    send("[DONE]");
                } else if (ending_ == "error") {
                    send(Json{{"error", {{"code", 500}, {"message", "parser gave up"}, {"type", "server_error"}}}}
                             .dump());
                }
                sink.done();
                return true;
            });
        });
        port_ = srv_.bind_to_any_port("127.0.0.1");
        thread_ = std::thread([this] { srv_.listen_after_bind(); });
        while (!srv_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ~Scripted() {
        srv_.stop();
        thread_.join();
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
    int requests() const { return requests_.load(); }

  private:
    std::string ending_;
    httplib::Server srv_;
    int port_ = 0;
    std::thread thread_;
    std::atomic<int> requests_{0};
};

server::LoadtestOptions options(const Scripted& s) {
    server::LoadtestOptions o;
    o.url = s.url();
    o.concurrency = 2;
    o.requests = 4;
    o.in_tokens = 12;
    o.out_tokens = 5;
    return o;
}

TEST(Loadtest, finished_streams_count_their_tokens) {
    Scripted s("finish");
    auto r = server::run_loadtest(options(s), nullptr);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(s.requests(), 4);
    EXPECT_EQ(r->failed, 0);
    EXPECT_EQ(r->out_tokens, 5);
    EXPECT_EQ(r->in_tokens, 7);
    EXPECT_GT(r->output_tokens_per_s, 0.0);
    EXPECT_GT(r->ttft_ms.p50, 0.0);
}

TEST(Loadtest, a_stream_that_fails_or_is_cut_counts_as_failed) {
    for (const char* ending : {"error", "cut"}) {
        Scripted s(ending);
        auto r = server::run_loadtest(options(s), nullptr);
        ASSERT_TRUE(r.ok()) << r.error().message;
        EXPECT_EQ(r->failed, 4) << ending;
        EXPECT_EQ(r->output_tokens_per_s, 0.0) << ending;
        ASSERT_FALSE(r->errors.empty());
        EXPECT_NE(r->errors[0].find(std::string(ending) == "error" ? "parser gave up" : "without a finish reason"),
                  std::string::npos)
            << r->errors[0];
    }
}

}  // namespace
}  // namespace bigmoe
