/*
 * Allocations the C++ runtime makes on the program's behalf. std::string's
 * members are an extern template compiled into libstdc++ (no frame
 * pointers): a string that outgrows its small buffer calls _M_create there,
 * which calls operator new. Each leak must be attributed to the function
 * that made the string, with main as its caller, for exactly the bytes
 * libstdc++ asked for (capacity + 1).
 *
 * Built by the test both with frame pointers and without (-O2
 * -fomit-frame-pointer), where the program's own functions are stepped out
 * of too.
 */
#include "common.h"
#include <string>

extern "C" {

/* One string of n characters: _M_create(n) asks for n + 1 bytes. */
NOINLINE void leak_string_made(size_t n)
{
    std::string *s = new std::string(opaque_size(n), 'x');
    keep(s);
    TRUTH_HEAP(sizeof(std::string) + s->capacity() + 1, 2);
}

/* A string grown by appends: each growth frees the old buffer; the last
   one (capacity + 1 bytes) stays. */
NOINLINE void leak_string_appended(int times)
{
    std::string *s = new std::string();
    for (int i = 0; i < times; i++)
        s->append("0123456789");
    keep(s);
    TRUTH_HEAP(sizeof(std::string) + s->capacity() + 1, 2);
}

NOINLINE void noleak_string(int times)
{
    for (int i = 0; i < times; i++) {
        std::string s(opaque_size(100), 'y');
        escape(&s[0]);
    }
}
}

int main()
{
    leak_string_made(1000);
    leak_string_appended(100);
    noleak_string(10);
    truth_dump();
    return 0;
}
