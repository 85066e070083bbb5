//! `named_enum!`: a fieldless enum declared from one table of `Variant => "name"` rows, so
//! its list of variants is written once.
//!
//! The macro generates the enum (with the attributes and doc comments given), `ALL` (every
//! variant, in table order), `name()` (the right-hand side), `index()` (the position in `ALL`)
//! and `Display` (the name). Adding a variant is adding a row; nothing else can fall out of
//! step.

/// Declares a fieldless enum from a table of `Variant => "name"` rows; see the
/// [module documentation](self).
///
/// ```ignore
/// named_enum! {
///     /// What a thing is.
///     #[derive(Clone, Copy, Debug, PartialEq, Eq)]
///     pub enum Colour {
///         /// The first one.
///         Red => "red",
///         /// The second one.
///         Green => "green",
///     }
/// }
/// assert_eq!(Colour::ALL, [Colour::Red, Colour::Green]);
/// assert_eq!((Colour::Green.name(), Colour::Green.index()), ("green", 1));
/// ```
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Enum:ident {
            $( $(#[$vmeta:meta])* $Variant:ident => $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $Enum {
            $( $(#[$vmeta])* $Variant, )+
        }

        impl $Enum {
            /// Every variant, in declaration order (the order of [`index`](Self::index)).
            pub const ALL: [$Enum; [$(stringify!($Variant)),+].len()] = [$($Enum::$Variant),+];

            /// The name the filter writes and reads for this variant (in the configuration,
            /// audit lines, problem documents or metric names).
            pub fn name(self) -> &'static str {
                match self {
                    $( $Enum::$Variant => $name, )+
                }
            }

            /// Every name, in declaration order, separated by `", "` (for messages that list
            /// what is accepted).
            #[allow(dead_code)] // Not every enum lists its names in a message.
            pub fn names() -> &'static str {
                const JOINED: &str = concat!($($name, ", "),+);
                JOINED.get(..JOINED.len() - 2).unwrap_or(JOINED)
            }

            /// Position in [`ALL`](Self::ALL).
            pub fn index(self) -> usize {
                // A fieldless enum without explicit discriminants numbers its variants from
                // 0 in declaration order, the order of `ALL`.
                self as usize
            }
        }

        impl ::core::fmt::Display for $Enum {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        enum Colour {
            /// First.
            Red => "red",
            /// Second.
            Green => "green",
            /// Third.
            Blue => "blue",
        }
    }

    #[test]
    fn all_name_index_and_display_come_from_the_one_table() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::Green, Colour::Blue]);
        assert_eq!(Colour::names(), "red, green, blue");
        for (i, c) in Colour::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        assert_eq!(Colour::Green.name(), "green");
        assert_eq!(Colour::Blue.to_string(), "blue");
    }
}
