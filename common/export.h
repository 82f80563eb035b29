// TESSERA_EXPORT marks what libtessera_client.so exports (docs/install.md): the client API in
// client/client.h and client/worker_clock.h and the plain types and functions they use. The
// libraries behind it are compiled with hidden visibility, so that nothing else (protobuf
// messages, gRPC stubs, internals) leaks into the dynamic symbol table.
#ifndef TESSERA_COMMON_EXPORT_H_
#define TESSERA_COMMON_EXPORT_H_

#define TESSERA_EXPORT __attribute__((visibility("default")))
// For a type nested in an exported class (a pimpl's Impl), which would otherwise inherit the
// enclosing class's default visibility.
#define TESSERA_HIDDEN __attribute__((visibility("hidden")))

#endif  // TESSERA_COMMON_EXPORT_H_
