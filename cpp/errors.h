// Exception types the bindings map to typed Python errors.
#pragma once

#include <stdexcept>

namespace fpmatch {

// A template or code that cannot be processed (NaN/Inf, zero vector, bad size).
struct InvalidInput : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// An array of the wrong dtype. Never cast silently: the caller converts.
struct WrongDtype : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Serialised bytes whose authentication tag does not verify: tampered,
// truncated, or written under another key.
struct AuthenticationFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An id that is already present (add) or absent where it must exist.
struct IdConflict : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace fpmatch
