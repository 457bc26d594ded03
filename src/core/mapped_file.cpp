#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace bigmoe {

Result<std::unique_ptr<MappedFile>> MappedFile::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return make_error("cannot open '" + path + "': " + std::strerror(errno),
                          errno == ENOENT ? ErrorKind::not_found : ErrorKind::bad_input);
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return make_error("'" + path + "' is not a regular file");
    }
    std::unique_ptr<MappedFile> f(new MappedFile());
    f->path_ = path;
    f->size_ = size_t(st.st_size);
    if (f->size_ > 0) {
        void* p = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            ::close(fd);
            return make_error("cannot map '" + path + "': " + std::strerror(errno), ErrorKind::resource_exhausted);
        }
        f->data_ = static_cast<const uint8_t*>(p);
        f->owned_ = true;
    }
    ::close(fd);
    return f;
}

std::unique_ptr<MappedFile> MappedFile::from_memory(const void* data, size_t size, std::string name) {
    std::unique_ptr<MappedFile> f(new MappedFile());
    f->data_ = static_cast<const uint8_t*>(data);
    f->size_ = size;
    f->path_ = std::move(name);
    return f;
}

MappedFile::~MappedFile() {
    if (owned_ && data_) munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace bigmoe
