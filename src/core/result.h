// Result<T>: a value or an Error with a kind and a message. Recoverable failures (bad files, bad
// flags, too little memory) travel as values; assertions are kept for programmer errors. The kind
// lets a front end answer without parsing the text (the server maps it to an HTTP status).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace bigmoe {

enum class ErrorKind {
    bad_input,           // a flag, request or argument the caller can fix
    not_found,           // a file or object that does not exist
    corrupt_file,        // a model or state file that is damaged or inconsistent
    unsupported,         // valid input this build or backend cannot handle
    resource_exhausted,  // memory (host or device) or another limit
    internal,            // a failure that is not the caller's
};

inline const char* error_kind_name(ErrorKind k) {
    switch (k) {
        case ErrorKind::bad_input:
            return "bad_input";
        case ErrorKind::not_found:
            return "not_found";
        case ErrorKind::corrupt_file:
            return "corrupt_file";
        case ErrorKind::unsupported:
            return "unsupported";
        case ErrorKind::resource_exhausted:
            return "resource_exhausted";
        case ErrorKind::internal:
            return "internal";
    }
    return "internal";
}

struct Error {
    std::string message;
    ErrorKind kind = ErrorKind::bad_input;
};

template <class T>
class [[nodiscard]] Result {
  public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() & { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const T& value() const& { return std::get<0>(v_); }
    T* operator->() { return &value(); }
    T& operator*() { return value(); }
    const T& operator*() const { return value(); }
    const T* operator->() const { return &value(); }
    const Error& error() const { return std::get<1>(v_); }

  private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
  public:
    Result() = default;
    Result(Error error) : err_(std::move(error)), ok_(false) {}
    bool ok() const { return ok_; }
    explicit operator bool() const { return ok_; }
    const Error& error() const { return err_; }

  private:
    Error err_;
    bool ok_ = true;
};

inline Error make_error(std::string msg, ErrorKind kind = ErrorKind::bad_input) {
    return Error{std::move(msg), kind};
}

}  // namespace bigmoe

// Programmer-error check: prints and aborts. Never reached by user input.
#define BM_CHECK(cond)                                                                    \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                 \
        }                                                                                 \
    } while (0)

// Assign the value of an expression returning Result<T> to dst, or return its error.
#define BM_ASSIGN(dst, expr)                            \
    do {                                                \
        auto bm_assign_r_ = (expr);                     \
        if (!bm_assign_r_) return bm_assign_r_.error(); \
        dst = std::move(*bm_assign_r_);                 \
    } while (0)

// Propagate an error from an expression returning Result<...>.
#define BM_TRY(expr)                                   \
    do {                                               \
        auto bm_try_r_ = (expr);                       \
        if (!bm_try_r_.ok()) return bm_try_r_.error(); \
    } while (0)
