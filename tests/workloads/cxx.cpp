/*
 * C++ operator new / new[] leaks. libstdc++'s operator new has no frame
 * pointer; frames[0] must still be the function that called new, and
 * frames[1] its caller (main). The requested size is the size passed to
 * operator new: sizeof(T), n * sizeof(T), plus the 8-byte array cookie of
 * the Itanium C++ ABI for arrays of types with a non-trivial destructor.
 *
 * The leak sites are extern "C" (plain symbol names), except
 * wl::leak_cxx_mangled, which checks that C++ names are demangled.
 */
#include "common.h"
#include <new>

struct Obj40 {
    char b[40];
};

struct alignas(64) Aligned128 {
    char b[100];
};
static_assert(sizeof(Aligned128) == 128, "Aligned128 size");

struct WithDtor {
    char b[24];
    ~WithDtor();
};
NOINLINE WithDtor::~WithDtor()
{
    escape(b);
}

extern "C" {

NOINLINE void leak_new_object(int times)
{
    for (int i = 0; i < times; i++)
        keep(new Obj40);
    TRUTH_HEAP(times * sizeof(Obj40), times);
}

NOINLINE void leak_new_array(size_t n)
{
    keep(new char[n]);
    TRUTH_HEAP(n, 1);
}

NOINLINE void leak_new_nothrow(size_t n)
{
    keep(new (std::nothrow) char[n]);
    TRUTH_HEAP(n, 1);
}

/* operator new(size_t, std::align_val_t) */
NOINLINE void leak_new_aligned(void)
{
    Aligned128 *p = new Aligned128;
    if (((uintptr_t)p & 63) != 0)
        fail("new Aligned128 not 64-byte aligned");
    keep(p);
    TRUTH_HEAP(sizeof(Aligned128), 1);
}

/* new T[4] with a destructor: 4 * 24 + 8 (cookie) = 104 bytes requested */
NOINLINE void leak_new_array_cookie(size_t n)
{
    keep(new WithDtor[n]);
    TRUTH_HEAP(n * sizeof(WithDtor) + sizeof(size_t), 1);
}

/* both new and malloc from the same function */
NOINLINE void leak_new_and_malloc(void)
{
    keep(new Obj40);
    keep(malloc(60));
    TRUTH_HEAP(sizeof(Obj40) + 60, 2);
}

NOINLINE void noleak_new_delete(int times)
{
    for (int i = 0; i < times; i++) {
        Obj40 *o = new Obj40;
        escape(o);
        delete o;
        char *a = new char[opaque_size(100 + (size_t)i)];
        escape(a);
        delete[] a;
        WithDtor *w = new WithDtor[opaque_size(3)];
        escape(w);
        delete[] w;
        Aligned128 *al = new Aligned128;
        escape(al);
        delete al;
    }
}

NOINLINE void noleak_new_fail(void)
{
    char *p = new (std::nothrow) char[opaque_size(HUGE_FAIL_SIZE)];
    if (p != nullptr)
        fail("new (nothrow) char[SIZE_MAX/2] succeeded");
    if (under_valgrind()) /* valgrind aborts instead of throwing */
        return;
    bool threw = false;
    try {
        p = new char[opaque_size(HUGE_FAIL_SIZE)];
        escape(p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    if (!threw)
        fail("new char[SIZE_MAX/2] did not throw");
}

} /* extern "C" */

namespace wl {
NOINLINE void leak_cxx_mangled(void)
{
    keep(new Obj40[2]);
    truth("heap", "wl::leak_cxx_mangled", 2 * sizeof(Obj40), 1);
}
} // namespace wl

/* cxx [no-throw]: no-throw skips the throwing operator new (a preloaded
   allocator's own operator new carries a return probe, and a C++ exception
   cannot unwind through a return probe's trampoline). */
int main(int argc, char **argv)
{
    leak_new_object(3);
    leak_new_array(1000);
    leak_new_nothrow(300);
    leak_new_aligned();
    leak_new_array_cookie(4);
    leak_new_and_malloc();
    noleak_new_delete(100);
    if (argc < 2 || strcmp(argv[1], "no-throw") != 0)
        noleak_new_fail();
    wl::leak_cxx_mangled();
    truth_dump();
    return 0;
}
